"""File and folder names of the published Step-Audio checkpoint tree (docs/checkpoints.md#folders-and-files).

Every loader and every writer takes its paths from here, so the tiny trees the project writes and the
real downloaded trees have one definition.
"""

TTS_DIR = "Step-Audio-TTS-3B"
CHAT_DIR = "Step-Audio-Chat"
TOKENIZER_DIR = "Step-Audio-Tokenizer"

# Step1 LLM folders (TTS-3B and Chat share the file set).
LLM_CONFIG = "config.json"
LLM_WEIGHTS = "model-00001.safetensors"
LLM_WEIGHTS_INDEX = "model.safetensors.index.json"
LLM_SPM = "tokenizer.model"
LLM_TOKENIZER_CONFIG = "tokenizer_config.json"
LLM_CONFIG_MODULE = "configuration_step1.py"  # reached through config.json's auto_map (trust_remote_code)

# Hybrid decoders live inside the TTS folder.
SPEECH_DECODER_DIR = "CosyVoice-300M-25Hz"
MUSIC_DECODER_DIR = "CosyVoice-300M-25Hz-Music"
DECODER_DIRS = (SPEECH_DECODER_DIR, MUSIC_DECODER_DIR)
DECODER_YAML = "cosyvoice.yaml"
FLOW_WEIGHTS = "flow.pt"
HIFT_WEIGHTS = "hift.pt"
CAMPPLUS_ONNX = "campplus.onnx"
DECODER_VERSION_MARKER = "VERSION_Vq0206Vocoder_1202"  # 0-byte file shipped in both decoder folders
# Derived from the published files by export/flow_onnx.py and export/vocoder_onnx.py (not in the download).
FLOW_DECODER_ONNX = "flow_decoder.onnx"
VOCODER_ONNX = "vocoder.onnx"

# Audio tokenizer.
LINGUISTIC_CODEBOOK = "linguistic_tokenizer.npy"
SEMANTIC_TOKENIZER_ONNX = "speech_tokenizer_v1.onnx"
PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
PARAFORMER_CONFIG = "config.yaml"
PARAFORMER_CMVN = "am.mvn"
PARAFORMER_WEIGHTS = "model.pt"

# Derived from the published files by export/tokenizer_onnx.py (not in the download): the vq02 encoder chunk step.
VQ02_ENCODER_ONNX = "vq02_encoder_chunk.onnx"

# Preset voices: the reference keeps them in its GitHub repository (``speakers/``), not on the hub; the trees the
# project writes put a synthetic set next to the model folders.
SPEAKERS_DIR = "speakers"
