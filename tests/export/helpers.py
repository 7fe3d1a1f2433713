"""The smallest decoder config with the published structure, shared by the export tests and their fixtures."""

from stepaudio.decoder.config import DecoderConfig, EncoderConfig, EstimatorConfig, FlowConfig, HiFTConfig

MICRO = DecoderConfig(
    flow=FlowConfig(
        input_size=16,
        encoder=EncoderConfig(input_size=16, output_size=16, attention_heads=2, linear_units=32, num_blocks=1),
        estimator=EstimatorConfig(channels=(16, 16), attention_head_dim=8, n_blocks=1, num_mid_blocks=1, num_heads=2),
    ),
    hift=HiFTConfig(
        base_channels=16,
        f0_cond_channels=16,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3),),
        source_resblock_kernel_sizes=(7, 11),
        source_resblock_dilation_sizes=((1,), (1,)),
    ),
)
