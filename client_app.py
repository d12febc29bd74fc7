"""Flower ClientApp: routes each message type to hasa_flwr.federation.client."""

from flwr.clientapp import ClientApp

from hasa_flwr.federation import client

app = ClientApp()
app.query("vocab")(client.query_vocab)
app.query("stats")(client.query_stats)
app.query("loss")(client.query_loss)
app.query("score")(client.query_score)
app.query("subnet")(client.store_subnet)
app.train(mods=[client.secure_statistics_mod])(client.train_subnet)
app.evaluate()(client.evaluate_subnet)
