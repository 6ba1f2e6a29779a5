"""``python -m export.smear_train``: the smear detector's one training path (the recipe is
export.training.smear_detector; this name is the command a data scientist types)."""

from export.training.smear_detector import main

if __name__ == "__main__":
    main()
