"""A recipe's model, summarised (what ``nca train RECIPE --dry-run`` prints)."""
from __future__ import annotations

from ..models import build_model, count_parameters, is_nca


def model_summary(recipe: dict) -> dict:
    model = build_model(recipe["model"])
    out = {"recipe": recipe.get("name"), "architecture": recipe["model"].get("architecture", "octree_nca"),
           "dims": recipe["model"]["dims"], "input_channels": recipe["model"]["input_channels"],
           "output_channels": recipe["model"]["output_channels"]}
    if is_nca(model):
        c = model.config
        out["levels"] = [
            {"level": i, "kernel_size": bb.kernel_size, "steps": c.steps[i],
             "factor_to_next": c.factors[i] if i < len(c.factors) else None,
             "parameters": count_parameters(bb)}
            for i, bb in enumerate(model.backbones)
        ]
        out.update(channels=c.channels, hidden=c.hidden, fire_rate=c.fire_rate, pyramid=c.pyramid,
                   normalization=c.normalization, perception=c.perception)
    out["parameters"] = count_parameters(model)
    return out


def format_summary(summary: dict) -> str:
    lines = [f"recipe: {summary['recipe']}", f"architecture: {summary['architecture']} "
             f"({summary['dims']}D, {summary['input_channels']} -> {summary['output_channels']})"]
    if "levels" in summary:
        lines.append(f"state: {summary['channels']} channels, hidden {summary['hidden']}, fire rate {summary['fire_rate']}, "
                     f"pyramid {summary['pyramid']}, normalization {summary['normalization'] or 'none'}, "
                     f"perception {summary['perception']}")
        lines.append("level  kernel  steps  factor->next   parameters")
        for lv in summary["levels"]:
            f = "x".join(map(str, lv["factor_to_next"])) if lv["factor_to_next"] else "-"
            lines.append(f"{lv['level']:>5}  {lv['kernel_size']:>6}  {lv['steps']:>5}  {f:>12}   {lv['parameters']:>10,}")
    lines.append(f"parameters: {summary['parameters']}")
    return "\n".join(lines)
