from image_segmentation.cli import main

raise SystemExit(main())
