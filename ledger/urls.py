"""HTTP routes of the ledger's chain API under /api/account/."""

from __future__ import annotations

from django.urls import path

from ledger import apis

urlpatterns = [
    path("account/chain/", apis.ChainAccountApi.as_view(), name="api-account-chain"),
    path("account/wallet/", apis.WalletApi.as_view(), name="api-account-wallet"),
    path("account/stake/", apis.StakeApi.as_view(), name="api-account-stake"),
    path("account/unbond/", apis.UnbondApi.as_view(), name="api-account-unbond"),
    path("account/unbonded/withdraw/", apis.UnbondedWithdrawApi.as_view(), name="api-account-unbonded-withdraw"),
    path("account/deposit/", apis.DepositApi.as_view(), name="api-account-deposit"),
    path("account/withdraw/", apis.WithdrawApi.as_view(), name="api-account-withdraw"),
]
