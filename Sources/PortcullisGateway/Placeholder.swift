enum _PlaceholderPortcullisGateway {}
