"""Models: decoder LM, Switch seq2seq with moelab routing, encoder classifier."""
