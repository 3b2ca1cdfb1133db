"""Accounts and double-entry transactions: escrow, settlement, providers' earnings and dispute bonds, and in
ledger/chain/ the bridge to the market's contracts on chain (deposits, withdrawals, stakes, slashes, anchors)."""
