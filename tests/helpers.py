import torch


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def zero_removed_units(model, plan, head_dim: int, n_rep: int, channels: int):
    """A copy of the dense `model` with the units a FASP-style plan removed set to zero (value channel (g, c):
    v_proj row and the o_proj columns of the group's query heads; MLP channel: down_proj column)."""
    import copy

    masked = copy.deepcopy(model)
    with torch.no_grad():
        for index, layer in enumerate(masked.model.layers):
            for g, kept in enumerate(plan.kept_values[index]):
                for c in set(range(head_dim)) - set(kept):
                    layer.self_attn.v_proj.weight[g * head_dim + c] = 0
                    for r in range(n_rep):
                        layer.self_attn.o_proj.weight[:, (g * n_rep + r) * head_dim + c] = 0
            layer.mlp.down_proj.weight[:, sorted(set(range(channels)) - set(plan.kept_channels[index]))] = 0
    return masked
