"""Flower ClientApp: routes each message type to hasa_flwr.federation.client."""

import gc

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

# A deployed device runs each message in a fresh process, and what was imported above (torch, Flower)
# lives until that process exits: freezing it keeps the garbage collector from walking those objects
# in every full collection and at exit (~0.35 CPU-s of a ~3 CPU-s process; docs/DEPLOYMENT.md).
gc.freeze()
