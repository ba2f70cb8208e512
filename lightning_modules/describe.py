"""``facebench list methods``: each registered method with its task kinds, input and cost."""

from __future__ import annotations

from typing import Any

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.registry import get_method_class, method_names

#: The reference task for parameter / FLOP figures: 40 binary attributes (CelebA).
REFERENCE_TASK = TaskSpec.binary_attributes([f"attr{i}" for i in range(40)], name="40 binary attributes")


def describe_methods() -> list[dict[str, Any]]:
    rows = []
    for name in method_names():
        cls = get_method_class(name)
        row: dict[str, Any] = {"method": name, "class": cls.__name__, "task_kinds": ",".join(sorted(cls.task_kinds)),
                               "input": f"{cls.input_channels}x{cls.input_size}x{cls.input_size}"}
        try:
            model = cls(task=REFERENCE_TASK, **cls.reference_config())
            row["params"] = model.parameter_count()
            row["flops_per_image"] = model.flops_per_image()
        except Exception as exc:  # noqa: BLE001
            row["params"] = row["flops_per_image"] = None
            row["note"] = f"{type(exc).__name__}: {exc}"[:100]
        rows.append(row)
    return rows
