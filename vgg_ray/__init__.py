"""vgg_ray: the VGG paper (Simonyan & Zisserman, ICLR 2015) reproduced on Ray.

The package root is the pure PyTorch core and never imports Ray; `vgg_ray.imagenet` is the shard format
and converter; `vgg_ray.distributed` is all the Ray glue. See README.md, "Layout".
"""
