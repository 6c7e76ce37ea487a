"""convlab: the building blocks of convolutional networks, their cost and what they buy."""
