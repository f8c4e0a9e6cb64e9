"""The model and its files: Flax BERT (`bert`; its training attention on XLA:CPU, with its own gradient, in
`attention`), the CRF head (`crf`), Hugging Face weight mapping (`hf`),
model directories (`store`: load, save, the `minilm` alias; `modeldir`: what a directory's files may
name, config.json's field types, the weight index), batched inference, whole or stage by stage (`infer`),
and where arrays live on the local devices (`sharding`: the data-parallel mesh that training, labelling
and evaluation share).

May import `distill.arch`, `distill.files` and `tasks`; nothing about training or distillation.
"""
