"""Building blocks of the WhatsApp campaign operator: the send ledger and the recipients source."""
