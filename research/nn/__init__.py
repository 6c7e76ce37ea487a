"""Networks (Flax linen): the one convolution and its shape arithmetic, activations, blocks, heads,
composite blocks and models; names become callables only in `blocks.build_block` and
`models.build_model`."""
