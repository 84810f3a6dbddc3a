"""All of vgg_ray's Ray glue, and the only package that imports Ray: connecting (session), the Ray Data
pipelines (data), the Train loop (train_loop), the Tune trials (trainer) and their schedule callback
(schedule_board), the evaluation fan-out (evaluate), the converter's tasks (convert) and the paper's
chain (reproduce). Each calls the pure core in vgg_ray/; the core never calls it."""
