"""The gate's fresh-process re-measure (`gate.fresh_process_remeasure`): reads a JSON spec on stdin
(device, seed, rule, threads, jobs of [suite, [impls in order], case_id, dtype, mode]) and prints,
as its last line, one JSON object per job: {impl: median ms, or null where it cannot be measured}."""
import json
import sys

import torch

from harness import gate
from harness.timing import StoppingRule


def main() -> None:
    spec = json.load(sys.stdin)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    remeasure = gate.engine_remeasure(spec["device"], int(spec["seed"]), StoppingRule(**spec["rule"]), 1)
    out = [{impl: remeasure.measure(suite, impl, case_id, dtype, mode) for impl in impls}
           for suite, impls, case_id, dtype, mode in spec["jobs"]]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
