"""SDN controller apps (os-ken, the maintained Ryu fork; upstream Ryu works too) and the
launcher that runs them. Pure load-balancing logic lives in ``nlb_logic`` so it can be
tested without a switch."""
