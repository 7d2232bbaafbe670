"""Literal reference implementations in float64, written from the papers' equations
(FLAP, Wanda-sp; docs/methods.md, with KV groups for grouped-query attention), for testing the fast path against.

No layer-by-layer pass, no streaming statistics, no slicing: full forwards with hooks that keep every
activation, torch.var, Python loops over units, and pruning by masking weights to zero ("mask mode",
which equals real pruning).
"""

import copy
import math

import torch


def _inputs_of(model, calibration, modules):
    """Every token's input to each module in `modules`, from one full forward: {module: [tokens, in]}."""
    store = {m: [] for m in modules}
    handles = [m.register_forward_hook(lambda mod, args, out: store[mod].append(args[0].reshape(-1, args[0].shape[-1])))
               for m in modules]
    with torch.no_grad():
        model(calibration, use_cache=False)
    for h in handles:
        h.remove()
    return {m: torch.cat(v) for m, v in store.items()}


def _geometry(model):
    c = model.config
    d = c.head_dim
    n_rep = c.num_attention_heads // c.num_key_value_heads
    return d, n_rep, c.num_key_value_heads, c.intermediate_size


def reference_flap(model, calibration, ratio, metric="WIFV", structure="AL-AM", remove_groups=None):
    """Returns (kept_groups, kept_channels, o_bias, down_bias) per layer."""
    m = copy.deepcopy(model).double()
    layers = m.model.layers
    d, n_rep, G, I = _geometry(m)
    h = m.config.hidden_size
    mods = [l.self_attn.o_proj for l in layers] + [l.mlp.down_proj for l in layers]
    X = _inputs_of(m, calibration, mods)
    N = calibration.shape[0]

    def metric_of(linear):
        x, W = X[linear], linear.weight.detach()
        if metric == "IFV":
            return x.var(0, unbiased=True)
        if metric == "WIFV":
            return x.var(0, unbiased=True) * (W ** 2).sum(0)
        return W.abs().mean(0) * torch.sqrt((x ** 2).sum(0) / N)

    attn = [metric_of(l.self_attn.o_proj) ** 2 for l in layers]  # squared for attention, as FLAP's code
    mlp = [metric_of(l.mlp.down_proj) for l in layers]
    L = len(layers)
    group_params = (n_rep * d + 2 * d) * h + h * n_rep * d
    channel_params = 3 * h

    if structure.startswith("AL"):
        z = lambda s: (s - s.mean()) / s.std()  # noqa: E731
        head = [z(a).reshape(G * n_rep, d).mean(1) for a in attn]  # head = mean of its standardised channels
        groups = [torch.stack([hs[g * n_rep:(g + 1) * n_rep].mean() for g in range(G)]) for hs in head]
        chans = [z(s) for s in mlp]
    else:
        head = [a.reshape(G * n_rep, d).sum(1) for a in attn]
        groups = [torch.stack([hs[g * n_rep:(g + 1) * n_rep].sum() for g in range(G)]) for hs in head]
        chans = mlp

    def lowest(scores, k):  # indices of the k lowest
        return set(sorted(range(len(scores)), key=lambda i: (scores[i].item(), i))[:k])

    if structure == "UL-UM":
        kept_g = [[g for g in range(G) if g not in lowest(s, math.floor(ratio * G))] for s in groups]
        kept_c = [[c for c in range(I) if c not in lowest(s, math.floor(ratio * I))] for s in chans]
    elif structure == "AL-AM":
        units = [(groups[l][g].item(), group_params, ("g", l, g)) for l in range(L) for g in range(G)]
        units += [(chans[l][c].item(), channel_params, ("c", l, c)) for l in range(L) for c in range(I)]
        units.sort(key=lambda u: -u[0])
        total = sum(u[1] for u in units)
        cum, best, threshold = 0.0, None, None
        for score, weight, _ in units:
            cum += weight
            gap = abs(cum - (1 - ratio) * total)
            if best is None or gap < best:
                best, threshold = gap, score
        kept_g = [[g for g in range(G) if groups[l][g].item() > threshold] for l in range(L)]
        kept_c = [[c for c in range(I) if chans[l][c].item() > threshold] for l in range(L)]
    else:
        rg = round(ratio * G * L) if remove_groups is None else remove_groups
        if structure == "UL-MM":
            kept_g = [[g for g in range(G) if g not in lowest(s, rg // L)] for s in groups]
            n = int((ratio * (G * group_params + I * channel_params) - group_params * (rg // L)) / channel_params)
            kept_c = [[c for c in range(I) if c not in lowest(s, n)] for s in chans]
        else:  # AL-MM
            flat = [(groups[l][g].item(), l, g) for l in range(L) for g in range(G)]
            gone = set((l, g) for _, l, g in sorted(flat)[:rg])
            kept_g = [[g for g in range(G) if (l, g) not in gone] for l in range(L)]
            n = int((L * ratio * (G * group_params + I * channel_params) - group_params * rg) / channel_params)
            flat = [(chans[l][c].item(), l, c) for l in range(L) for c in range(I)]
            gone = set((l, c) for _, l, c in sorted(flat)[:n])
            kept_c = [[c for c in range(I) if (l, c) not in gone] for l in range(L)]

    o_bias, down_bias = [], []
    for l, layer in enumerate(layers):
        mean_o = X[layer.self_attn.o_proj].mean(0)
        removed = [j for g in range(G) if g not in kept_g[l] for j in range(g * n_rep * d, (g + 1) * n_rep * d)]
        o_bias.append(sum(layer.self_attn.o_proj.weight[:, j] * mean_o[j] for j in removed) if removed else None)
        mean_d = X[layer.mlp.down_proj].mean(0)
        removed = [c for c in range(I) if c not in kept_c[l]]
        down_bias.append(sum(layer.mlp.down_proj.weight[:, c] * mean_d[c] for c in removed) if removed else None)
    return kept_g, kept_c, o_bias, down_bias


def mask_units(layer, kept_groups, kept_channels, d, n_rep, G, I):
    """Zero the weights of removed units (mask mode)."""
    with torch.no_grad():
        for g in range(G):
            if g not in kept_groups:
                q = slice(g * n_rep * d, (g + 1) * n_rep * d)
                kv = slice(g * d, (g + 1) * d)
                layer.self_attn.q_proj.weight[q] = 0
                layer.self_attn.k_proj.weight[kv] = 0
                layer.self_attn.v_proj.weight[kv] = 0
                layer.self_attn.o_proj.weight[:, q] = 0
        for c in range(I):
            if c not in kept_channels:
                layer.mlp.gate_proj.weight[c] = 0
                layer.mlp.up_proj.weight[c] = 0
                layer.mlp.down_proj.weight[:, c] = 0


def reference_wanda_sp(model, calibration, ratio):
    """Sequential Wanda-sp in mask mode. Returns (kept_groups, kept_channels, masked float64 model)."""
    m = copy.deepcopy(model).double()
    d, n_rep, G, I = _geometry(m)
    N = calibration.shape[0]
    kept_g, kept_c = [], []
    for layer in m.model.layers:
        o, down = layer.self_attn.o_proj, layer.mlp.down_proj
        X = _inputs_of(m, calibration, [o, down])  # earlier layers are already (mask-)pruned

        def score(linear, X=X):  # ||X_j|| * mean_i |W_ij|
            return torch.sqrt((X[linear] ** 2).sum(0) / N) * linear.weight.detach().abs().mean(0)

        so, sd = score(o), score(down)
        group = [so[g * n_rep * d:(g + 1) * n_rep * d].sum().item() for g in range(G)]
        order_g = sorted(range(G), key=lambda g: (group[g], g))
        order_c = sorted(range(I), key=lambda c: (sd[c].item(), c))
        kg = sorted(order_g[math.floor(ratio * G):])
        kc = sorted(order_c[math.floor(ratio * I):])
        mask_units(layer, kg, kc, d, n_rep, G, I)
        kept_g.append(kg)
        kept_c.append(kc)
    return kept_g, kept_c, m
