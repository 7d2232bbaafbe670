import torch


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits
