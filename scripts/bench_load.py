"""How long a student waits for the first model: import the package and load every bundled model in
a fresh interpreter with the hub offline. Prints wall and CPU seconds per model (target: under 5
CPU seconds for import + the first load).

    python scripts/bench_load.py [--repeats 3]
"""
import argparse
import json
import os
import subprocess
import sys

CODE = ("import json, sys, time; t = time.time(); c = time.process_time(); from utils.models import load_model; "
        "load_model(sys.argv[1], device='cpu'); print(json.dumps([time.time() - t, time.process_time() - c]))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from utils.models.loading import BUNDLED

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in BUNDLED:
        runs = [json.loads(subprocess.run([sys.executable, "-c", CODE, name], env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
                for _ in range(args.repeats + 1)][1:]  # the first run warms the file cache
        wall = min(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        print(f"{name:>14}: import + load_model {wall:.2f} s wall, {cpu:.2f} s CPU (best of {args.repeats})")


if __name__ == "__main__":
    main()
