"""`moelab paper-smoke`: the paper preset (SparTMoE: Switch-Base-8/16 fine-tuned on SAMSum) at its real size.

The tests build tiny Switch models; this runs the preset at the size a GPU user runs it. Per model:

1. a checkpoint directory: one given with --checkpoint, else google/switch-base-N from the local HF cache, else a
   STAND-IN (the hub is out of reach here): HF's SwitchTransformersConfig at the published sizes with random
   weights, and a byte-level BPE trained on the bundled corpora in place of T5's SentencePiece, written with
   save_pretrained;
2. in a child process of its own (its peak memory is its own; nothing of the other model is left in its heap):
   the preset built as a training run builds it: params.yaml plus the `-S` values of README "The paper preset"
   (PRESET_COMMAND) with `pretrained: <that directory>`, so SummarizationTask loads the tokenizer, config and
   weights from the directory and swaps every sparse MLP for a moelab MoE layer with a fresh router;
3. for each SparTMoE gating variant (linear / attention router x softmax-top2 / softmax-soft / sparsemax): the
   checkpoint's weights restored, fresh routers of that variant, `steps` steps of the training loop's step with
   the preset's optimiser (bf16 autocast, as the loop runs on CUDA) on one SAMSum-shaped batch; the first step's
   FLOPs counted (FlopCounterMode) and compared with the analytic count at the realised experts per token, and
   the activations it saves for backward measured; 2 test dialogues summarised greedily, scored with ROUGE.

Writes the metrics JSON (numbers only), its .meta.json (provenance: what was a stand-in, machine, load) and a
markdown file with the smoke table and the GPU-cost table derived from the counted FLOPs (paper/README.md).

Modules: preset (sizes, the README's command, the variants), standins (checkpoint, tokenizer and SAMSum
stand-ins), model (one model's process: the preset's build, restore / reroute, steps, generation), tables
(metrics, the smoke and GPU-cost tables), smoke (the command: every model, each in its own process).
"""
