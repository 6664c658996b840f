enum _PlaceholderPortcullisClient {}
