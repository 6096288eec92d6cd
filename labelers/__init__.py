"""prmforge labeling algorithms: plain typed functions and small classes, no Prefect."""
