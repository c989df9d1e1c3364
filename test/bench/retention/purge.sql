SELECT payments.purge_retention(1000);
