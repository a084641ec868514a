import pytest
import torch
from torch import nn

from nca_cli.training.ema import EMA


def test_ema_follows_the_weights_by_hand():
    model = nn.Linear(1, 1)
    model.register_buffer("count", torch.tensor(0))     # non-float buffers are copied, not averaged
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = EMA(model, decay=0.75)
    for w, b, n in [(3.0, 4.0, 1), (5.0, -4.0, 2)]:
        with torch.no_grad():
            model.weight.fill_(w)
            model.bias.fill_(b)
            model.count.fill_(n)
        ema.update(model)
    # weight: 0.75*1 + 0.25*3 = 1.5, then 0.75*1.5 + 0.25*5 = 2.375
    # bias:   0.75*0 + 0.25*4 = 1.0, then 0.75*1.0 + 0.25*(-4) = -0.25
    sd = ema.state_dict()
    assert sd["weight"].item() == pytest.approx(2.375) and sd["bias"].item() == pytest.approx(-0.25)
    assert sd["count"].item() == 2
    assert model.weight.item() == 5.0                     # the model itself is untouched
    assert not any(p.requires_grad for p in ema.shadow.parameters())
