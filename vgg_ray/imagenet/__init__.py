"""ImageNet for vgg_ray: the shard format (shards.py), the converter (convert.py) and the generated demo
data (demo.py). Pure: no Ray here; the converter takes its parallel map from its caller."""
