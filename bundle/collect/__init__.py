"""Collection: the engine, vantages and one module per slice."""
