"""Networks: the one convolution, its shape arithmetic, activations, blocks and models
(Flax linen)."""
