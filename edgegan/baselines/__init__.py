"""edgegan.baselines"""

# seed 000 §5 baselines beside barycentric fast adaptation (issue 4)
from edgegan.baselines.coalescence import (  # noqa: E402
    METHODS,
    CoalescenceTask,
    MethodResult,
    barycentric_fa,
    compare_methods,
    edge_only,
    ensemble,
    evaluate_generator,
    pretrain_sources,
    run_method,
    transfer,
    weight_average,
    whole_data,
)
