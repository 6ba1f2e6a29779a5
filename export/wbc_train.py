"""``python -m export.wbc_train``: the white-cell type classifier's one training path (the recipe is
export.training.cell_classifier, task ``wbc_type``, PBC's single-cell images by default)."""

from export.training.cell_classifier import main

if __name__ == "__main__":
    main("wbc_type", "pbc", "build/wbc-pbc")
