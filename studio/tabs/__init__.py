"""One module per tab: layout and wiring only; each exposes ``build(ctx, shared)``."""
