"""The method, pure (no Flower): scores, allocation, slicing, aggregation, models, training."""
