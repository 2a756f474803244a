"""fastopt.torch on CUDA tensors against torch.optim on the same card (a real GPU only; run by
bench/gpu_check.sh). Prints one JSON object: failures (empty when all is well), what was
checked, and step timings (CUDA events) against torch's fused AdamW.

Checks: the conv + linear model of tests/test_torch_dropin.py in float64 on the GPU, each class,
OneCycleLR, 30 steps, equal to torch.optim (foreach=False) to 1e-10; the same steps run under a
side stream (torch.cuda.stream) give the same parameters (fastopt follows torch's current
stream); a float32 model trained with autocast and GradScaler follows torch's fused AdamW to
1e-4; a model moved to another dtype after construction is refused at the next step.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main():
    import torch

    import fastopt.torch as ft
    from test_torch_dropin import CLASSES, Net, build, groups, scheduler  # noqa: F401

    failures, checked, timings = [], [], {}

    def expect(condition, what):
        checked.append(what)
        if not condition:
            failures.append(what)

    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, 1, 8, 8, generator=generator, dtype=torch.float64).to(device)
    y = torch.randint(0, 3, (30, 6), generator=generator).to(device)

    def run(module, name, stream=None):
        torch.manual_seed(0)
        model = Net().double().to(device)
        optimizer = build(module, name, model, CLASSES[name], reference=module is torch.optim)
        sched = scheduler("one_cycle", optimizer, name, CLASSES[name])
        context = torch.cuda.stream(stream) if stream is not None else torch.cuda.device(device)
        with context:
            for t in range(30):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[t]), y[t]).backward()
                optimizer.step()
                sched.step()
        torch.cuda.synchronize()
        return model

    for name in CLASSES:
        ours, theirs = run(ft, name), run(torch.optim, name)
        error = max(((p - q).abs() / q.abs().clamp(min=1e-3)).max().item()
                    for p, q in zip(ours.parameters(), theirs.parameters()))
        expect(error <= 1e-10, f"{name}: float64 on the GPU equals torch.optim ({error:.1e})")
    side = run(ft, "AdamW", stream=torch.cuda.Stream())
    same = run(ft, "AdamW")
    expect(all(torch.equal(p, q) for p, q in zip(side.parameters(), same.parameters())),
           "a side stream gives the same parameters")

    # AMP: float32 parameters, autocast and GradScaler, against torch's fused AdamW.
    results = []
    for module, extra in ((ft, {}), (torch.optim, {"fused": True})):
        torch.manual_seed(0)
        model = Net().to(device)
        optimizer = module.AdamW(groups(model, {"lr": 1e-3}), lr=1e-3, **extra)
        scaler = torch.amp.GradScaler("cuda")
        for t in range(20):
            optimizer.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = torch.nn.functional.cross_entropy(model(x[t].float()), y[t])
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        results.append(model)
    error = max((p - q).abs().max().item() for p, q in zip(*(m.parameters() for m in results)))
    expect(error <= 1e-4, f"AMP float32 with GradScaler follows torch fused AdamW ({error:.1e})")

    model = Net().double().to(device)
    optimizer = ft.Adam(model.parameters())
    model.float()
    torch.nn.functional.cross_entropy(model(x[0].float()), y[0]).backward()
    try:
        optimizer.step()
        expect(False, "a converted model is refused at the next step")
    except RuntimeError as error:
        expect("build the optimizer again" in str(error), "a converted model is refused at the next step")

    # Timings: the 41,642-parameter MLP's step and training step on the card.
    from fastopt.bench import torch_dropin

    for kind in ("step", "training_step"):
        for implementation in ("fastopt", "torch"):
            case = torch_dropin.Case(kind, implementation, device)
            step = case.optimizer.step if kind == "step" else case._training_step
            for _ in range(20):
                step()
            torch.cuda.synchronize()
            times = []
            for _ in range(100):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e3)
            timings[f"{kind} {implementation} us"] = sorted(times)[len(times) // 2]
    return {"failures": failures, "checked": len(checked), "timings": timings}


if __name__ == "__main__":  # not on import (pytest --doctest-modules imports every module)
    report = main()
    print(json.dumps(report))
    sys.exit(1 if report["failures"] else 0)
