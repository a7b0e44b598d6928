"""The PanGu models as math: `pangu_alpha` (the model and its loss wrapper), `layers` (Linear)."""
