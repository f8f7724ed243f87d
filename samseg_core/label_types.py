"""Names of the label types stage fields hold, shared by the option declarations and the schema plumbing."""

SEGMENTATION, DETECTIONS, HEATMAP = "Segmentation", "Detections", "Heatmap"
FLOAT, INT, STRING, DICT = "float", "int", "str", "dict"
LABEL_TYPES = (SEGMENTATION, DETECTIONS, HEATMAP, FLOAT, INT, STRING, DICT)
