"""``python -m export.rbc_train``: the red-cell shape classifier's one training path (the recipe is
export.training.cell_classifier, task ``rbc_morphology``, Chula RBC-12's crops by default, split by
whole field)."""

from export.training.cell_classifier import main

if __name__ == "__main__":
    main("rbc_morphology", "chula-rbc-crops", "build/rbc-chula", epochs=40)
