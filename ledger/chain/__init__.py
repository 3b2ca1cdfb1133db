"""The bridge between the off-chain ledger and the market's contracts on an Ethereum chain (see docs/chain.md)."""
