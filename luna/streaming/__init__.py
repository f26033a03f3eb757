"""Streaming tokenization and vocoding for causal models (``model.causal=true``).

``tok.stream_encoder(sample_rate)`` → :class:`StreamingEncoder`; ``tok.stream_decoder(vocoder=...)`` →
:class:`StreamingDecoder`; :class:`StreamingVocoder` wraps a HiFi-GAN; :class:`StreamingResampler` converts
rates incrementally. See docs/streaming.md.
"""
from luna.streaming.decoder import StreamingDecoder
from luna.streaming.encoder import BlockEncoder, StreamingEncoder, tokenize_blockwise
from luna.streaming.latency import algorithmic_latency_ms
from luna.streaming.resample import StreamingResampler
from luna.streaming.vocoder import StreamingVocoder, receptive_frames

__all__ = ["BlockEncoder", "StreamingDecoder", "StreamingEncoder", "StreamingResampler", "StreamingVocoder",
           "algorithmic_latency_ms", "receptive_frames", "tokenize_blockwise"]
