"""Per-cell classifiers of the smear path (white-cell type, red-cell shape): their network and export."""
