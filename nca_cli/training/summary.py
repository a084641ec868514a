"""A recipe's model, summarised (what ``nca train RECIPE --dry-run`` prints), with its dataset
checked against the model when the dataset exists."""
from __future__ import annotations

from ..models import architecture, build_model, count_parameters
from ..recipes import Recipe, resolve_dataset


def model_summary(recipe: Recipe) -> dict:
    from ..data.dataset import PreparedDataset
    from .trainer import check_dataset

    model = build_model(recipe.model)
    arch = architecture(model.config.architecture)
    out = {"recipe": recipe.name, "architecture": arch.name, "dims": model.config.dims,
           "input_channels": model.config.input_channels, "output_channels": model.config.output_channels,
           "output": arch.output, "predictor": arch.predictor}
    if arch.is_nca:
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
    path = resolve_dataset(recipe)
    if path is not None and (path / "dataset.yaml").is_file():
        train = PreparedDataset(path, "train")
        check_dataset(train, recipe, path, patches=True)
        val, test = PreparedDataset(path, "val"), PreparedDataset(path, "test")
        out["dataset"] = {"path": str(path), "train": len(train), "val": len(val), "test": len(test),
                          "classes": train.classes, "check": "ok"}
    else:
        out["dataset"] = {"path": str(path) if path else None, "check": "not found (create it with nca prepare)"}
    return out


def format_summary(summary: dict) -> str:
    lines = [f"recipe: {summary['recipe']}", f"architecture: {summary['architecture']} "
             f"({summary['dims']}D, {summary['input_channels']} -> {summary['output_channels']}, {summary['output']})"]
    if "levels" in summary:
        lines.append(f"state: {summary['channels']} channels, hidden {summary['hidden']}, fire rate {summary['fire_rate']}, "
                     f"pyramid {summary['pyramid']}, normalization {summary['normalization'] or 'none'}, "
                     f"perception {summary['perception']}")
        lines.append("level  kernel  steps  factor->next   parameters")
        for lv in summary["levels"]:
            f = "x".join(map(str, lv["factor_to_next"])) if lv["factor_to_next"] else "-"
            lines.append(f"{lv['level']:>5}  {lv['kernel_size']:>6}  {lv['steps']:>5}  {f:>12}   {lv['parameters']:>10,}")
    ds = summary.get("dataset") or {}
    if ds.get("check") == "ok":
        lines.append(f"dataset: {ds['path']} ({ds['train']} train / {ds['val']} val / {ds['test']} test cases, "
                     f"classes {', '.join(ds['classes'])}): matches the model")
        if ds["val"] == 0:
            lines.append("  note: no validation cases, so best.pt is never written; model.pt is saved every "
                         "training.save_every epochs")
    elif ds:
        lines.append(f"dataset: {ds.get('path')} {ds['check']}")
    lines.append(f"parameters: {summary['parameters']}")
    return "\n".join(lines)
