from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("market", "0007_verification"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="runner_epoch",
            field=models.PositiveIntegerField(
                default=0,
                help_text="Which runner holds the lease: raised each time another takes the job over (a resume).",
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="runner_lost_at",
            field=models.DateTimeField(
                blank=True,
                null=True,
                help_text="When a takeover found its runner lost: its server died no later than this, so a provider "
                "heard from since is connected to a live one.",
            ),
        ),
    ]
