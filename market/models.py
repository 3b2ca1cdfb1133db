"""Market models: the imported language models and the shards they are cut into."""

from __future__ import annotations

from django.db import models


class LanguageModel(models.Model):
    """An LLM imported from a GGUF file, in one weight format (quant).

    The same GGUF imported as f32 and as q4 gives two rows with the same name: their shards differ in files and
    speed but compute the same function (q4 exactly reproduces the GGUF's Q4_1 weights).
    """

    class Quant(models.TextChoices):
        F32 = "f32", "float32 weights"
        Q4 = "q4", "4-bit weights (MatMulNBits)"

    name = models.SlugField(max_length=100, help_text='Short model name, e.g. "smollm2-135m".')
    architecture = models.CharField(max_length=32, default="llama")
    source_sha256 = models.CharField(max_length=64, help_text="SHA-256 (hex) of the GGUF file it was imported from.")
    config = models.JSONField(help_text="Model hyperparameters (layers, hidden size, heads, vocab, RoPE theta, ...).")
    quant = models.CharField(max_length=8, choices=Quant.choices, default=Quant.F32)
    tokenizer_file = models.FileField(
        upload_to="tokenizers/", help_text="Tokenizer, chat template and stop tokens as JSON (content-addressed)."
    )
    tokenizer_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "quant"]
        constraints = [models.UniqueConstraint(fields=["name", "quant"], name="market_languagemodel_name_quant_uniq")]

    def __str__(self) -> str:
        return f"{self.name} ({self.quant})"


class Shard(models.Model):
    """A contiguous range of decoder layers [first_layer, end_layer) of a model, as one ONNX file.

    The first shard also holds the token embedding and the last the final norm and LM head. The file is stored
    content-addressed: `sha256` is the hash of its bytes, which providers check after downloading.
    """

    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="shards")
    shard_id = models.CharField(max_length=160, unique=True, help_text="<model>:<quant>:<first_layer>-<end_layer>")
    first_layer = models.PositiveIntegerField()
    end_layer = models.PositiveIntegerField(help_text="Exclusive.")
    has_embedding = models.BooleanField(default=False)
    has_head = models.BooleanField(default=False)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    file = models.FileField(upload_to="shards/")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "first_layer"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(end_layer__gt=models.F("first_layer")),
                name="market_shard_end_after_first",
            ),
            models.UniqueConstraint(fields=["model", "first_layer", "end_layer"], name="market_shard_layer_range_uniq"),
        ]

    def __str__(self) -> str:
        return self.shard_id

    @property
    def n_layers(self) -> int:
        return self.end_layer - self.first_layer
