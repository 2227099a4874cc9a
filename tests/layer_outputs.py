"""Every array a recurrent layer's forward and backward produce, by name (for comparing runs)."""


def layer_outputs(layer, y, dx, state_n, dstate0, cache) -> dict:
    out = {"y": y, "dx": dx, **{f"grad {k}": g for k, g in layer.grads.items()}}
    for name, s in (("state_n", state_n), ("dstate0", dstate0)):
        for i, a in enumerate(s if isinstance(s, tuple) else (s,)):
            out[f"{name}[{i}]"] = a
    for k, dirs in enumerate(cache["dh"]):
        for d, dh in enumerate(dirs):
            out[f"dh[{k}][{d}]"] = dh
    return out
