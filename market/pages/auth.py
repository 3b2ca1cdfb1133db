"""Sign up, sign in and sign out. Failed sign-ins are limited per client address and per user name, and new accounts
per client address (each one gets the signup grant: free money an address must not farm). Over a limit the page
answers 429 with Retry-After before it checks anything."""

from __future__ import annotations

import math

from django import forms
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from config.throttling import FailureThrottle
from market import services


def _too_many(throttle: FailureThrottle, keys: list[str]) -> int | None:
    """Seconds to wait when any key is over its limit, else None."""
    waits = [wait for key in keys if (wait := throttle.blocked(key)) is not None]
    return math.ceil(max(waits)) if waits else None


class SignInView(auth_views.LoginView):
    """Sign-in (THROTTLE_RATES["sign_in"] failed attempts per client address and per user name)."""

    template_name = "market/signin.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        failures = FailureThrottle("sign_in")
        keys = [f"address:{failures.client(request)}", f"user:{request.POST.get('username', '').strip().lower()}"]
        if (retry := _too_many(failures, keys)) is not None:
            context = self.get_context_data(throttled=f"Too many failed sign-ins: try again in {retry} s.")
            refused: HttpResponse = self.render_to_response(context, status=429)
            refused["Retry-After"] = str(retry)
            return refused
        response: HttpResponse = super().post(request, *args, **kwargs)
        if response.status_code != 302:  # the form came back: the user name and password did not match
            for key in keys:
                failures.record(key)
        return response


class SignUpForm(UserCreationForm):  # type: ignore[type-arg]  # django-stubs: generic over the user model
    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username",)

    username = forms.CharField(max_length=150, help_text="Letters, digits and @ . + - _ only.")


def sign_up(request: HttpRequest) -> HttpResponse:
    """A new account with a password, its API token and the signup grant; signed in at once."""
    next_url = request.POST.get("next") or request.GET.get("next") or "/account/"
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = "/account/"
    if request.user.is_authenticated:
        return redirect(next_url)
    form = SignUpForm(request.POST or None)
    if request.method == "POST":
        signups = FailureThrottle("sign_up")
        key = f"address:{signups.client(request)}"
        if (retry := _too_many(signups, [key])) is not None:
            context = {"form": form, "next": next_url, "throttled": f"Too many new accounts: try again in {retry} s."}
            refused = render(request, "market/signup.html", context, status=429)
            refused["Retry-After"] = str(retry)
            return refused
        if form.is_valid():
            user = services.account_sign_up(
                username=form.cleaned_data["username"], password=form.cleaned_data["password1"]
            )
            signups.record(key)
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect(next_url)
    return render(request, "market/signup.html", {"form": form, "next": next_url}, status=400 if form.errors else 200)
