#!/usr/bin/env bash
# 2 CPU processes (torchrun, gloo) against 1 process at the ddp-two-process acceptance check's
# settings (8gaussians pretrain 120 steps, then FAIL-PD on the rotated target for 80 steps,
# width 256): max relative weight difference per role and checkpoint, printed and written to
# benchmarks/results/ddp_agreement.json. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}; TR=${TR:-.venv/bin/torchrun}
W=$(mktemp -d)
pre=recipes/8gaussians/pretrain.yaml; fl=recipes/8gaussians_rotated/fail_pd.yaml
s="--set train.steps=120 --set train.checkpoint_every=60 --set eval.n_samples=200 --no-progress"
$PY -m flowpost train $pre --out $W/p1 $s >/dev/null 2>&1
$PY -m flowpost train $pre --out $W/p2 $s >/dev/null 2>&1  # one-process twice: determinism
$TR --nproc_per_node 2 -m flowpost train $pre --out $W/p3 $s >/dev/null 2>&1
f="--set init_from=$W/p1 --set train.steps=80 --set method.disc_warmup_steps=10 --set train.checkpoint_every=40 --set eval.n_samples=200 --no-progress"
$PY -m flowpost train $fl --out $W/f1 $f >/dev/null 2>&1
$TR --nproc_per_node 2 -m flowpost train $fl --out $W/f2 $f >/dev/null 2>&1
$PY - "$W" <<'PY'
import glob, json, sys
from safetensors.torch import load_file
W = sys.argv[1]
def load(d):
    return {k: v for f in glob.glob(d + "*.safetensors") for k, v in load_file(f).items()}
def compare(a, b):
    out = {}
    for da, db in zip(sorted(glob.glob(f"{W}/{a}/checkpoints/*/")), sorted(glob.glob(f"{W}/{b}/checkpoints/*/"))):
        A, B = load(da), load(db)
        rel = {}
        for k, x in A.items():
            if not x.is_floating_point() or "optim" in k or "rng" in k:
                continue
            role = k.split(".")[1]
            r = ((x - B[k]).abs().max() / (x.abs().max() + 1e-12)).item()
            rel[role] = max(rel.get(role, 0.0), r)
        out[da.rstrip("/").split("/")[-1]] = rel
    return out
res = {"settings": "8gaussians pretrain 120 steps; FAIL-PD 80 steps, disc_warmup 10, width 256; OMP 1",
       "flow_matching_1_vs_2_processes": compare("p1", "p3"),
       "flow_matching_1_vs_1_process": compare("p1", "p2"),
       "fail_pd_1_vs_2_processes": compare("f1", "f2")}
print(json.dumps(res, indent=1))
json.dump(res, open("benchmarks/results/ddp_agreement.json", "w"), indent=1)
PY
rm -rf "$W"
