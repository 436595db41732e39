"""Data-parallel self-training with torch.distributed (gloo, 2 CPU processes on 127.0.0.1):
identical parameters on both ranks, global ESS = ESS of the concatenated log-weights, a 2-rank
step with batch b per rank = a single-process step on the same 2b samples, rank-0-only
checkpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from bridge.flows import make_flow
from bridge.flows.training import TrainConfig, Trainer, reverse_kl_loss
from bridge.mcmc.reweighting import ess

NROW, BATCH = (4, 4), 6

WORKER = textwrap.dedent("""
    import os, sys, torch
    import torch.distributed as dist
    from bridge.flows import make_flow
    from bridge.flows.distributed import init_distributed
    from bridge.flows.training import TrainConfig, Trainer

    out, estimator = sys.argv[1], sys.argv[2]
    rank, world = init_distributed("gloo")
    # rank 1 starts from other weights: the trainer must broadcast rank 0's
    torch.manual_seed(0 if rank == 0 else 123)
    model = make_flow("U1", 2, n_layers=4, k=4, hidden=(4,))
    tr = Trainer(model, TrainConfig(nrow=(4, 4), beta=2.0, batch=6, lr=1e-2,
                                    estimator=estimator))
    init = [p.detach().clone() for p in model.parameters()]
    first = tr.step()
    after1 = [p.detach().clone() for p in model.parameters()]
    tr.train(2, checkpoint=os.path.join(out, f"ck{rank}.pt"))
    torch.save({"rank": rank, "world": world, "init": init, "after1": after1,
                "final": [p.detach().clone() for p in model.parameters()],
                "history": tr.history, "first": first}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path, estimator: str) -> list[dict]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), estimator],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers timed out")
        assert p.returncode == 0, out.decode()[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _reference_step(estimator: str):
    """One single-process step on the concatenation of the two ranks' batches."""
    torch.manual_seed(0)
    model = make_flow("U1", 2, n_layers=4, k=4, hidden=(4,))
    cfg = TrainConfig(nrow=NROW, beta=2.0, batch=2 * BATCH, lr=1e-2, estimator=estimator)
    tr = Trainer(model, cfg)
    gens = [generator_rank(tr, r) for r in range(2)]
    tr.opt.zero_grad(set_to_none=True)
    if estimator == "reparam":
        parts = [reverse_kl_loss(model, tr.action, BATCH, NROW, gen=g) for g in gens]
        surrogate = sum(s for s, _ in parts) / 2
        logw = torch.cat([lw for _, lw in parts])
    else:  # REINFORCE with the baseline of the whole 2b batch
        with torch.no_grad():
            us = [model.sample(BATCH, NROW, generator=g) for g in gens]
        u = torch.cat([x for x, _ in us])
        f = torch.cat([lq for _, lq in us]) + tr.action(u)
        surrogate = ((f - f.mean()) * model.log_prob(u)).mean() + f.mean()
        logw = -f
    surrogate.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), cfg.clip_norm)
    tr.opt.step()
    return [p.detach().clone() for p in model.parameters()], logw


def generator_rank(tr: Trainer, rank: int) -> torch.Generator:
    return tr.batch_generator(0, rank=rank)


@pytest.mark.parametrize("estimator", ["reparam", "reinforce"])
def test_two_rank_training_matches_single_process(tmp_path, estimator):
    res = _run_two_ranks(tmp_path, estimator)
    r0, r1 = res
    assert (r0["world"], r1["world"]) == (2, 2)
    # broadcast at construction, then identical updates
    for a, b in zip(r0["init"], r1["init"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(r0["final"], r1["final"], strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(r0["init"], r0["final"], strict=True))
    # the statistics are global and identical on both ranks
    assert r0["history"] == [{**h, "seconds": r0["history"][i]["seconds"]}
                             for i, h in enumerate(r1["history"])]
    # one 2-rank step with b per rank == one single-process step on the same 2b samples
    ref_params, ref_logw = _reference_step(estimator)
    for a, b in zip(r0["after1"], ref_params, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), float((a - b).abs().max())
    first = r0["first"]
    assert first["ess"] == pytest.approx(ess(ref_logw), rel=1e-12, abs=1e-14)
    assert first["loss"] == pytest.approx(float(-ref_logw.mean()), rel=1e-12)
    # the ESS of either half alone differs: the statistic really is global
    half = ess(ref_logw[:BATCH])
    assert abs(half - first["ess"]) > 1e-9
    # rank 0 alone writes checkpoints
    assert (tmp_path / "ck0.pt").exists() and not (tmp_path / "ck1.pt").exists()
    ck = torch.load(tmp_path / "ck0.pt", weights_only=False)
    assert ck["world_size"] == 2 and ck["step"] == 3


def test_importing_initialises_nothing():
    code = ("import torch.distributed as d, bridge.flows.training, bridge.cli.flows;"
            "print(d.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE="2"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
