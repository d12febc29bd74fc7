"""Data: each client's own files or image folders, the agreed vocabulary, and the built-in data sets."""

from .clients import (DATASETS, LOCAL, TEXT_DATASETS, FederatedData, Source, client_order, federation_vocab,
                      images_client, load_federated, node_image_data, text_split)
from .core import IGNORE_INDEX, ClientData, DataError, split_indices
from .synthetic import SYNTHETIC_COMPLEXITY, synthetic_complexity
from .text import (MAX_TITLE_WORDS, PAD, UNK, clean_title, encode_split, read_candidates, read_vocab,
                   vocab_hash)

__all__ = ["DATASETS", "LOCAL", "TEXT_DATASETS", "FederatedData", "Source", "client_order", "federation_vocab",
           "images_client", "load_federated", "node_image_data", "text_split", "IGNORE_INDEX", "ClientData",
           "DataError", "split_indices", "SYNTHETIC_COMPLEXITY", "synthetic_complexity", "MAX_TITLE_WORDS", "PAD",
           "UNK", "clean_title", "encode_split", "read_candidates", "read_vocab", "vocab_hash"]
