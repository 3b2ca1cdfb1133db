"""The bridge's rows: wallets and their mirrored stakes, the operator's outbox of transactions, the contracts'
addresses, credited deposits, scan cursors, and anchored settlement batches. Imported by ledger/models.py, so they
belong to the ledger app (app label `ledger`)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Wallet(models.Model):
    """A user's address on the chain and the reference its deposits carry; the mirror of its stake on chain.

    On the development chain (CHAIN_DEV_WALLETS) the market may hold the key (`dev_key`) and act for the user, so
    the API can stake, unbond and deposit; elsewhere the user links an address it signs for and acts from its own
    wallet. The stake fields mirror `Staking.stakeOf` as last read (`stake_read_at`); the market places a provider
    only while that read is fresh and the active stake reaches the contract's minimum.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet")
    address = models.CharField(max_length=42, unique=True, null=True, blank=True, help_text="EIP-55 checksummed")
    deposit_ref = models.CharField(max_length=66, unique=True, help_text="bytes32 (0x hex) a deposit names")
    dev_key = models.CharField(max_length=66, blank=True, default="", help_text="dev chain only: the market holds it")
    stake_active = models.BigIntegerField(default=0, help_text="base units that can take work")
    stake_unbonding = models.BigIntegerField(default=0, help_text="base units unbonding (still slashable)")
    unbond_release_at = models.DateTimeField(null=True, blank=True)
    stake_slashed = models.BigIntegerField(default=0, help_text="base units ever slashed")
    stake_read_at = models.DateTimeField(null=True, blank=True, help_text="when the mirror was last read from chain")

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"wallet {self.address or '(no address)'} of user {self.user_id}"


class ChainOp(models.Model):
    """One transaction the operator must get mined, written in the same database transaction as the ledger change
    that needs it (an outbox: a crash cannot lose it or send it without the ledger change).

    The outbox sends ops in id order. An op is signed once, with a nonce allocated from the database, and the same
    signed bytes are resent until a receipt appears, so a retry can never execute twice; the contracts also refuse
    a repeated withdrawal id, issue id, evidence hash or batch id.
    """

    class Kind(models.TextChoices):
        ISSUE = "issue", "issue tokens into the vault for a ledger mint"
        WITHDRAW = "withdraw", "pay a withdrawal from the vault"
        SLASH = "slash", "slash a provider's stake"
        ANCHOR = "anchor", "anchor a settlement batch"
        ADMIN = "admin", "change a Staking parameter to the market's setting"

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        SENT = "sent", "signed and sent, not mined yet"
        MINED = "mined", "mined"
        FAILED = "failed", "refused by the contract"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    key = models.CharField(max_length=200, unique=True, help_text="idempotency key of the request")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="chain_ops"
    )
    args = models.JSONField(default=dict, help_text="the call's arguments (amounts as decimal strings)")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    nonce = models.BigIntegerField(null=True, blank=True)
    raw_tx = models.TextField(blank=True, default="", help_text="the signed transaction (0x hex), resent as is")
    tx_hash = models.CharField(max_length=66, blank=True, default="", db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    block_number = models.BigIntegerField(null=True, blank=True)
    gas_used = models.BigIntegerField(null=True, blank=True)
    epoch = models.PositiveIntegerField(default=0, help_text="the deployment it was mined on (bridge.epoch())")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    mined_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pk"]
        indexes = [models.Index(fields=["state", "id"], name="ledger_chainop_state_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({self.state})"


class ChainDeployment(models.Model):
    """Where one of the market's contracts lives on one chain; a second start reuses it when its code is there."""

    chain_id = models.BigIntegerField()
    name = models.CharField(max_length=64)
    address = models.CharField(max_length=42)
    deployed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["chain_id", "name"], name="ledger_chaindeployment_once")]

    def __str__(self) -> str:
        return f"{self.name} at {self.address} on chain {self.chain_id}"


class ChainCursor(models.Model):
    """A named integer the bridge keeps: the next nonce of a sender, the last block scanned for deposits, the
    outbox's lease (unix seconds until which one flusher holds it)."""

    name = models.CharField(max_length=120, unique=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class ChainDeposit(models.Model):
    """A `Deposited` log of the vault, credited to the ledger once (unique per transaction hash and log index)."""

    tx_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    block_number = models.BigIntegerField()
    sender = models.CharField(max_length=42)
    deposit_ref = models.CharField(max_length=66)
    amount = models.BigIntegerField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    credit = models.ForeignKey(
        "ledger.Transaction", null=True, blank=True, on_delete=models.PROTECT, help_text="null: unknown reference"
    )
    epoch = models.PositiveIntegerField(default=0, help_text="the deployment whose vault received it")
    seen_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["tx_hash", "log_index"], name="ledger_chaindeposit_once")]

    def __str__(self) -> str:
        return f"deposit {self.amount} to {self.deposit_ref} ({self.tx_hash}:{self.log_index})"


class SettlementBatch(models.Model):
    """A batch of settlements whose Merkle root is anchored on chain (batch ids 0, 1, 2, ... as the contract wants)."""

    batch_id = models.BigIntegerField(unique=True)
    root = models.CharField(max_length=66)
    count = models.PositiveIntegerField()
    total = models.BigIntegerField(help_text="base units the batch's buyers paid (providers plus fees)")
    op = models.OneToOneField(ChainOp, on_delete=models.PROTECT, related_name="batch")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["batch_id"]

    def __str__(self) -> str:
        return f"batch {self.batch_id} ({self.count} settlements)"


class SettlementLeaf(models.Model):
    """One job's settlement in a batch: the leaf's values (as the contract's `settlementLeaf` takes them) and hash."""

    settlement = models.OneToOneField("ledger.Transaction", on_delete=models.PROTECT, related_name="anchor_leaf")
    job_ref = models.CharField(max_length=64, db_index=True)
    batch = models.ForeignKey(SettlementBatch, on_delete=models.PROTECT, related_name="leaves")
    values = models.JSONField(help_text="[jobRef, escrow, providers, fee, refund, payoutsHash]")
    leaf = models.CharField(max_length=66)

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "leaf"], name="ledger_settlementleaf_unique_in_batch"),
            models.CheckConstraint(condition=~Q(leaf=""), name="ledger_settlementleaf_hash_set"),
        ]

    def __str__(self) -> str:
        return f"{self.job_ref} in batch {self.batch_id}"
