"""The blood-smear image path: images → tiles → detections → counts, with the same result sinks
as the event path. ``count_image`` counts one image; ``evaluate`` measures an engine on a
VOC-annotated set (BCCD). Engines: ``baseline`` (classical OpenCV, no training)."""

from edgehema.smear.detections import SMEAR_CLASSES, Detection, counts
from edgehema.smear.image_io import image_files, read_image
from edgehema.smear.pipeline import ENGINES, count_image, overlay

__all__ = ["ENGINES", "SMEAR_CLASSES", "Detection", "count_image", "counts", "image_files", "overlay", "read_image"]
