"""Outbound clients for the marketplaces the stock capability serves: Ozon, Wildberries and
Yandex Market, each keeping its published limits on our side."""
