import torch

from nca_cli.inference.octree import predict_logits
from nca_cli.models import NCAConfig, OctreeNCA
from nca_cli.inference.outputs import dice_score
from nca_cli.training.losses import bce_dice_loss


def disks(n, size, g):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs, masks = [], []
    for _ in range(n):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
        r = int(torch.randint(4, 8, (1,), generator=g))
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).float()
        img = 0.2 + 0.6 * m + 0.05 * torch.randn(size, size, generator=g)
        imgs.append(img[None])
        masks.append(m[None])
    return torch.stack(imgs), torch.stack(masks)


def test_octree_nca_learns_a_small_2d_task():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = OctreeNCA(NCAConfig(dims=2, input_channels=1, output_channels=1, levels=3, steps=[6, 6, 8], hidden=32))
    opt = torch.optim.Adam(model.parameters(), lr=1.6e-3, betas=(0.9, 0.99))
    losses = []
    for step in range(250):
        x, y = disks(4, 32, g)
        logits, _ = model(x, seed=step)
        loss = bce_dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)
    x, y = disks(8, 32, torch.Generator().manual_seed(99))
    dice = dice_score(predict_logits(model, x, impl="torch") > 0, y).mean().item()
    assert dice > 0.7, dice
