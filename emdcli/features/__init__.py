"""Images to feature maps: the batched, overlapped pipeline (:mod:`.pipeline`), the feature cache
(:mod:`.cache`), and the one feature source every task embeds through (:mod:`.source`)."""
